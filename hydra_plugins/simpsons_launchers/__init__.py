"""The presets' launchers (conf/hydra/launcher/): Hydra's plugins, with what simpsons.launchers adds.

Hydra instantiates launchers only from the `hydra_plugins` namespace package, and imports every
module here when it looks for plugins: each module imports only its plugin's light launcher class,
and defines nothing when that plugin (an optional extra) is not installed.
"""
