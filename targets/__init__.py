"""edgec.targets: device profiles as data (profiles/*.toml) and the op-support queries on them."""
