module github.com/flowaudit/flowaudit

go 1.26.8

require (
	github.com/spf13/pflag v1.1.0
	go.uber.org/zap v1.28.0
)

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)

tool github.com/cilium/ebpf/cmd/bpf2go
