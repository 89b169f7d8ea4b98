// pause is the sandbox ("infra") container of every pod on the embedded node: it holds the pod's
// namespaces, reaps orphaned children and exits on SIGTERM/SIGINT. Built static, shipped FROM scratch,
// because no registry (and so no registry.k8s.io/pause) is reachable where modelloop is developed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
