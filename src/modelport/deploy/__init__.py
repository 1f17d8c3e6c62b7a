"""Deployment artefacts written for others to run: Kubernetes and KServe manifests
(`modelport k8s`) and container build contexts (`modelport build`). The server never imports
this package."""
