package bpf

// The C compiler is pinned: Debian 12's clang-14 (1:14.0.6-12) and its
// llvm-strip. `make generate` checks the version before it runs this, so
// the committed objects are reproduced byte for byte.
//
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type flow_key -type flow_value -type conn_key -type conn_value -type overflow_value -type ethertype_value -type stat -type direction -type local_port_set -type endpoint_key -type dns_event -type flow_cache_slot flowaudit flowaudit.c -- -I/usr/include/x86_64-linux-gnu
