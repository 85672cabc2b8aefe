package bpf

import (
	"testing"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

func TestSmoke(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range c.Memory() {
		t.Logf("%+v", m)
	}
}
