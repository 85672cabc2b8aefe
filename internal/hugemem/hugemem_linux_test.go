package hugemem

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

type elem struct{ a [256]byte }

// TestMakeAdvisesHugePages: a large slice lies in a mapping marked
// MADV_HUGEPAGE ("hg" in /proc/self/smaps); both a large and a small one
// are empty with the asked capacity.
func TestMakeAdvisesHugePages(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage"); err != nil {
		t.Skipf("kernel without transparent huge pages: %v", err)
	}
	const n = 200_000 // ~50 MiB
	big := Make[elem](n)
	if len(big) != 0 || cap(big) != n {
		t.Fatalf("Make(%d): len %d cap %d", n, len(big), cap(big))
	}
	mid := uintptr(unsafe.Pointer(unsafe.SliceData(big[:n]))) + uintptr(n/2)*unsafe.Sizeof(elem{})
	if !advisedHuge(t, mid) {
		t.Errorf("the middle of a %d-element slice is not in a MADV_HUGEPAGE mapping", n)
	}
	small := Make[elem](10)
	if len(small) != 0 || cap(small) != 10 {
		t.Fatalf("Make(10): len %d cap %d", len(small), cap(small))
	}
}

// advisedHuge reports whether the mapping holding addr has VmFlags hg.
func advisedHuge(t *testing.T, addr uintptr) bool {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		if lo, hi, ok := mappingRange(line); ok {
			in = addr >= lo && addr < hi
			continue
		}
		if v, ok := strings.CutPrefix(line, "VmFlags:"); ok && in {
			return strings.Contains(" "+v+" ", " hg ")
		}
	}
	t.Fatalf("address %#x in no mapping", addr)
	return false
}

func mappingRange(line string) (lo, hi uintptr, ok bool) {
	r, _, found := strings.Cut(line, " ")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(r, "-")
	if !found {
		return 0, 0, false
	}
	l, err1 := strconv.ParseUint(a, 16, 64)
	h, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uintptr(l), uintptr(h), true
}
