package snapshot_test

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"

	"github.com/flowaudit/flowaudit/audit/benchflows"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// Encoding and decoding of snapshot files of n synthetic flows
// (internal/benchflows). Compare runs with benchstat:
//
//	go test ./audit/snapshot -run '^$' -bench . -count 10 > new.txt

func synthetic(b *testing.B, n int) *snapshot.Snapshot {
	b.Helper()
	m, site, err := benchflows.Load()
	if err != nil {
		b.Fatal(err)
	}
	g, err := benchflows.New(m, site, "eth0")
	if err != nil {
		b.Fatal(err)
	}
	return g.Snapshot(g.Flows(0, n), uint32(n+n/20))
}

func encoded(b *testing.B, s *snapshot.Snapshot) []byte {
	b.Helper()
	var buf bytes.Buffer
	if err := snapshot.Write(&buf, s); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

func benchmarkWrite(b *testing.B, n int) {
	s := synthetic(b, n)
	b.SetBytes(int64(len(encoded(b, s))))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := snapshot.Write(io.Discard, s); err != nil {
			b.Fatal(err)
		}
	}
}

func benchmarkRead(b *testing.B, n int) {
	data := encoded(b, synthetic(b, n))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s, err := snapshot.Read(bytes.NewReader(data), "bench.json")
		if err != nil {
			b.Fatal(err)
		}
		if len(s.Flows) != n {
			b.Fatalf("%d flows read, want %d", len(s.Flows), n)
		}
	}
}

// WriteFile: temp file, fsync and rename in the benchmark's temp directory.
func benchmarkWriteFile(b *testing.B, n int) {
	s := synthetic(b, n)
	path := filepath.Join(b.TempDir(), "snap.json")
	b.SetBytes(int64(len(encoded(b, s))))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := snapshot.WriteFile(path, s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWrite10k(b *testing.B)      { benchmarkWrite(b, 10_000) }
func BenchmarkWrite100k(b *testing.B)     { benchmarkWrite(b, 100_000) }
func BenchmarkRead10k(b *testing.B)       { benchmarkRead(b, 10_000) }
func BenchmarkRead100k(b *testing.B)      { benchmarkRead(b, 100_000) }
func BenchmarkWriteFile10k(b *testing.B)  { benchmarkWriteFile(b, 10_000) }
func BenchmarkWriteFile100k(b *testing.B) { benchmarkWriteFile(b, 100_000) }
