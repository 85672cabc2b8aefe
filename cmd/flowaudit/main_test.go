package main

import (
	"os"
	"testing"
)

var binDir string

// tempDirNoCleanup gives a directory that lives for the whole test binary
// (the built CLI is shared by several tests); TestMain removes it.
func tempDirNoCleanup() (string, error) {
	if binDir == "" {
		d, err := os.MkdirTemp("", "flowaudit-bin-")
		if err != nil {
			return "", err
		}
		// Readable by all: TestE2ENotRoot runs the binary as nobody.
		if err := os.Chmod(d, 0o755); err != nil {
			return "", err
		}
		binDir = d
	}
	return binDir, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}
