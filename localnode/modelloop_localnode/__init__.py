"""modelloop's local node: a small kubelet stand-in that runs the pods of modelloop's runtime image
as local processes, so the embedded control plane can run the whole loop without a container runtime.

Entry point: `modelloop-localnode` (`agent.main`). See docs/localnode.md.
"""
