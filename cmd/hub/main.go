// Command hub is the fieldsync hub: it enrols site agents, issues pledges,
// receives bundles over QUIC or by hand, and shows the aggregated picture.
// See `hub --help` and the project README.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"fieldsync/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cwd, _ := os.Getwd()
	inv := &invocation{args: os.Args[1:], cwd: cwd, stderr: os.Stderr}
	code := cli.Execute(ctx, newRoot(inv), os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
