// Command csi-registrar announces a CSI node plugin to the kubelet through the kubelet's plugin
// registration API (k8s.io/kubelet/pkg/apis/pluginregistration/v1): it serves GetInfo and
// NotifyRegistrationStatus on a socket in the kubelet's plugins_registry directory, which the
// kubelet's plugin watcher finds. It does what the Kubernetes CSI node-driver-registrar does
// for the SPIFFE CSI driver (charts/x0tta6bl4-spire), which the Go module proxy does not serve.
//
//	csi-registrar -driver-name csi.spiffe.io \
//	  -kubelet-registration-path /var/lib/kubelet/plugins/csi.spiffe.io/csi.sock \
//	  -registration-socket /registration/csi.spiffe.io-reg.sock -csi-address /spiffe-csi/csi.sock
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	name     string
	endpoint string
	failed   chan string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, status *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if status.PluginRegistered {
		log.Printf("kubelet registered CSI driver %s (endpoint %s)", r.name, r.endpoint)
	} else {
		select {
		case r.failed <- status.Error:
		default:
		}
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func waitForSocket(path string, stop <-chan os.Signal) bool {
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return true
		}
		select {
		case <-stop:
			return false
		case <-time.After(time.Second):
		}
	}
}

func main() {
	name := flag.String("driver-name", "", "CSI driver name (e.g. csi.spiffe.io)")
	endpoint := flag.String("kubelet-registration-path", "", "the driver's CSI socket as the kubelet sees it")
	regSocket := flag.String("registration-socket", "", "where to serve the registration API (in plugins_registry)")
	csiAddress := flag.String("csi-address", "", "the driver's CSI socket as this container sees it (waited for)")
	flag.Parse()
	if *name == "" || *endpoint == "" || *regSocket == "" {
		log.Fatal("-driver-name, -kubelet-registration-path and -registration-socket are required")
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	if *csiAddress != "" {
		log.Printf("waiting for the driver's socket %s", *csiAddress)
		if !waitForSocket(*csiAddress, stop) {
			return
		}
	}
	if err := os.Remove(*regSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("cannot remove stale %s: %v", *regSocket, err)
	}
	listener, err := net.Listen("unix", *regSocket)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", *regSocket, err)
	}
	r := &registrar{name: *name, endpoint: *endpoint, failed: make(chan string, 1)}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, r)
	go func() {
		if err := server.Serve(listener); err != nil {
			log.Printf("serve: %v", err)
		}
	}()
	log.Printf("serving the plugin registration API for %s on %s", *name, *regSocket)
	code := 0
	select {
	case <-stop:
	case reason := <-r.failed:
		log.Printf("kubelet refused to register %s: %s", *name, reason)
		code = 1
	}
	server.GracefulStop()
	_ = os.Remove(*regSocket)
	os.Exit(code)
}
