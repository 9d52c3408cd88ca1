from types import SimpleNamespace

from protocol.layers import layer_comment, layer_name


def test_layer_name_format() -> None:
    assert layer_name(1, 0.00134) == "PULSE face 1 (err 1.3e-3)"
    assert layer_name(3, 0.02) == "PULSE face 3 (err 2.0e-2)"
    assert layer_name(2, 0.0) == "PULSE face 2 (err 0)"


def test_layer_comment_says_imagined_and_provenance() -> None:
    text = layer_comment(SimpleNamespace(seed=7, downscale_error=1.5e-3, eps_reached=True), "stylegan2-ffhq-1024")
    assert "not a recovery" in text and "Imagined" in text
    assert "seed: 7" in text and "stylegan2-ffhq-1024" in text and "1.500e-03" in text and "yes" in text
