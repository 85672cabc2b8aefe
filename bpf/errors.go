package bpf

import "errors"

// Sentinel errors, wrapped with context by the functions that return them.
var (
	// ErrPermission: the caller lacks CAP_BPF/CAP_NET_ADMIN (or root).
	ErrPermission = errors.New("permission denied: flowaudit needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON")
	// ErrInterfaceNotFound: no interface by that name in the network namespace.
	ErrInterfaceNotFound = errors.New("interface not found")
	// ErrXDPInUse: another XDP program is attached and replacing it was not asked for.
	ErrXDPInUse = errors.New("another XDP program is already attached")
	// ErrAlreadyAttached: flowaudit is already attached to that interface by this collector.
	ErrAlreadyAttached = errors.New("already attached to this interface")
	// ErrClosed: the collector was closed.
	ErrClosed = errors.New("collector closed")
)
