"""The controllers' reconciles, decided: each `plan` is a pure function of what its controller observed (a frozen
snapshot) and returns what to write. The controllers observe, call the plan, and act (docs/architecture.md, "One
reconcile shape")."""
