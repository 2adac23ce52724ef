// Command agent is the fieldsync site agent: it records deliveries and
// trainings at a site, fully offline, and syncs them to the hub. See
// `agent --help` and the project README.
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
