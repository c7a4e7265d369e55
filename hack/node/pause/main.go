// pause is the sandbox ("pause") container of the local real node: it holds a pod's namespaces open,
// reaps orphaned children (it is PID 1 of the pod when the PID namespace is shared) and exits on
// SIGINT/SIGTERM, like Kubernetes' own pause (build/pause/linux/pause.c). It is Go rather than C
// only so that hack/node builds it with the toolchain's Go, statically, with no compiler installed.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause (kubemoe hack/node) 1.0")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		switch s {
		case syscall.SIGCHLD:
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		default:
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", s)
			os.Exit(0)
		}
	}
}
