//go:build !linux

package linkbench

import (
	"context"
	"errors"
	"time"

	"fieldsync/internal/linksim"
)

// ErrNoNamespaces says the HTTPS baseline cannot run here.
var ErrNoNamespaces = errors.New("the HTTPS baseline needs Linux network namespaces")

// HTTPSUpload is the HTTPS baseline; it runs on Linux only.
func HTTPSUpload(context.Context, linksim.Profile, int64, []Object, string, time.Duration, time.Duration) (Result, error) {
	return Result{}, ErrNoNamespaces
}

// RealUDPTransfer runs on Linux only.
func RealUDPTransfer(context.Context, linksim.Profile, int64, []Object, time.Duration) (Result, error) {
	return Result{}, ErrNoNamespaces
}
