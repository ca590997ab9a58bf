"""The experiments of the paper: data, models, trainers, setups, the minima cache and the toy problems."""
