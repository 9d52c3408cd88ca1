"""Installers for the editor plug-ins (`pulse-server install-plugin gimp|krita`).

`common` holds what both editors need (copy the protocol client, vendor wheels for a bundled Python, check a
system Python); `gimp` and `krita` know their editor's folders. Nothing here imports torch.
"""
