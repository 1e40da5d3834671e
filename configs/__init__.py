"""The presets, one TOML file per network and preset: configs/<net>/<preset>.toml (installed as sscjax.presets).

Each file lists every setting with a comment: what it is, its unit and the paper's value. `ssc train NET --preset
NAME` reads configs/NET/NAME.toml; a file of your own goes to `--config FILE`. Adding a file adds a preset.
"""
