"""The curvature core: problem and losses, products, Σ engines, operators, eigensolvers, criteria, exact."""
