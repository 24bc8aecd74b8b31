# The VerticalPodAutoscaler CRDs (autoscaling.k8s.io), shipped in the Go module
# k8s.io/autoscaler/vertical-pod-autoscaler (deploy/vpa-v1-crd-gen.yaml): scripts/cluster
# installs them so that the guide's VPA object is accepted (the guide's kubectl apply of a
# release URL cannot be fetched here). No VPA controller runs; the chart defaults to
# updateMode Off.
version() { echo "$VPA_VERSION"; }
build() {
  local dir
  dir="$(go mod download -json "k8s.io/autoscaler/vertical-pod-autoscaler@$VPA_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
  install -m 0644 "$dir/deploy/vpa-v1-crd-gen.yaml" "$1/bin/vpa-v1-crd-gen.yaml"
}
