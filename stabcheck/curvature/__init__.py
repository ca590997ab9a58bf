"""The curvature core: problem and losses, products, Σ engines, operators, eigensolvers, criteria (results,
solves, the batch-size sweep, the sample-space form of Theorem 1), exact."""
