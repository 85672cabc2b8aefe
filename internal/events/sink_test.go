package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFileSinkAppendsAndReopens: events are appended to what the file
// held, one line each; after logrotate moves the file away, Reopen starts
// a new one at the same path and the moved file gets nothing more.
func TestFileSinkAppendsAndReopens(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.json")
	if err := os.WriteFile(path, []byte("{\"old\":1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, nil, "h")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.String() != path {
		t.Errorf("String %q", s.String())
	}
	if err := s.Write([]byte(`{"n":1}`), 3); err != nil {
		t.Fatal(err)
	}
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := s.Write([]byte(`{"n":2}`), 3); err != nil { // still the old file
		t.Fatal(err)
	}
	if err := s.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := s.Write([]byte(`{"n":3}`), 3); err != nil {
		t.Fatal(err)
	}
	if got, want := read(t, rotated), "{\"old\":1}\n{\"n\":1}\n{\"n\":2}\n"; got != want {
		t.Errorf("rotated file %q, want %q", got, want)
	}
	if got, want := read(t, path), "{\"n\":3}\n"; got != want {
		t.Errorf("new file %q, want %q", got, want)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("new file mode %v, want 0640", st.Mode().Perm())
	}
	// A reopen that fails keeps the old descriptor.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.Reopen(); err == nil {
		t.Error("reopening onto a directory succeeded")
	}
	if err := s.Write([]byte(`{"n":4}`), 3); err != nil {
		t.Errorf("write after a failed reopen: %v", err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestOpenTargets(t *testing.T) {
	var out bytes.Buffer
	s, err := Open("-", &out, "h")
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte(`{"a":1}`), 6) //nolint:errcheck
	s.Write([]byte(`{"a":2}`), 6) //nolint:errcheck
	if out.String() != "{\"a\":1}\n{\"a\":2}\n" || s.String() != "stdout" || s.Reopen() != nil {
		t.Errorf("stdout sink wrote %q", out.String())
	}
	dir := t.TempDir()
	for target, want := range map[string]string{
		"":                            "empty target",
		"http://example.org/x":        "unknown scheme",
		dir:                           "is a directory",
		filepath.Join(dir, "no/such"): "no such file or directory",
		"syslog+tcp://127.0.0.1:1":    "connection refused",
	} {
		if _, err := Open(target, nil, "h"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q): %v, want an error with %q", target, err, want)
		}
	}
}

func TestParseSyslog(t *testing.T) {
	for target, want := range map[string]SyslogConfig{
		"syslog://":                           {Network: "unixgram", Addr: "/dev/log", Facility: 16, AppName: "flowaudit"},
		"syslog:///run/x.sock":                {Network: "unixgram", Addr: "/run/x.sock", Facility: 16, AppName: "flowaudit"},
		"syslog+unix:///run/x.sock":           {Network: "unixgram", Addr: "/run/x.sock", Facility: 16, AppName: "flowaudit"},
		"syslog://192.0.2.1":                  {Network: "udp", Addr: "192.0.2.1:514", Facility: 16, AppName: "flowaudit"},
		"syslog+udp://[2001:db8::1]:5514":     {Network: "udp", Addr: "[2001:db8::1]:5514", Facility: 16, AppName: "flowaudit"},
		"syslog+tcp://logs:601?facility=auth": {Network: "tcp", Addr: "logs:601", Facility: 4, AppName: "flowaudit"},
		"syslog://?facility=LOCAL5&app=fa-1":  {Network: "unixgram", Addr: "/dev/log", Facility: 21, AppName: "fa-1"},
	} {
		got, err := ParseSyslog(target)
		if err != nil || got != want {
			t.Errorf("ParseSyslog(%q) = %+v, %v; want %+v", target, got, err, want)
		}
	}
	for target, want := range map[string]string{
		"syslog+tcp://":                  "HOST:PORT",
		"syslog+tcp://h:0":               `port "0"`,
		"syslog+udp://h:514/path":        "HOST:PORT",
		"syslog://?facility=nope":        "unknown facility",
		"syslog://?level=3":              `unknown parameter "level"`,
		"syslog://?app=a%20b":            "printable",
		"syslog+http://h":                "unknown scheme",
		"syslog+unix://host/x":           "syslog+unix:///PATH",
		"syslog://user@h:514":            "user or fragment",
		"syslog+tcp://h:99999999":        "port",
		"syslog://h:514?facility=local9": "unknown facility",
	} {
		if _, err := ParseSyslog(target); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSyslog(%q): %v, want an error with %q", target, err, want)
		}
	}
}

// rfc5424 matches the header Message writes.
var rfc5424 = regexp.MustCompile(`^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) (\d+) (\S+) - (.*)$`)

// checkSyslog parses one message: PRI, host, app, MSGID and a JSON body.
func checkSyslog(t *testing.T, msg string, pri int, body string) {
	t.Helper()
	m := rfc5424.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("not RFC 5424: %q", msg)
	}
	if m[1] != strconv.Itoa(pri) || m[3] != "sensor-1" || m[4] != "flowaudit" || m[5] != strconv.Itoa(os.Getpid()) || m[6] != "finding" || m[7] != body {
		t.Errorf("message %q: want PRI %d, host sensor-1, app flowaudit, our pid, MSGID finding, body %s", msg, pri, body)
	}
	ts, err := time.Parse(time.RFC3339Nano, m[2])
	if err != nil || time.Since(ts) > time.Minute || time.Since(ts) < 0 {
		t.Errorf("timestamp %q: %v", m[2], err)
	}
	if !json.Valid([]byte(m[7])) {
		t.Errorf("body is not JSON: %q", m[7])
	}
}

func TestSyslogUnixgramAndUDP(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log.sock")
	ux, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ux.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for target, conn := range map[string]net.PacketConn{
		"syslog://" + sock + "?facility=auth":                         ux,
		"syslog+udp://" + udp.LocalAddr().String() + "?facility=auth": udp,
	} {
		s, err := Open(target, nil, "sensor-1")
		if err != nil {
			t.Fatal(err)
		}
		body := `{"event":{"action":"opened"},"message":"a\nb"}`
		if err := s.Write([]byte(body), 3); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65536)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		checkSyslog(t, string(buf[:n]), 4*8+3, body)
		s.Close()
	}
}

// TestSyslogTCPFramingAndReconnect: octet-counted frames; a receiver that
// restarts gets the next event on a new connection.
func TestSyslogTCPFramingAndReconnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s, err := Open("syslog+tcp://"+addr, nil, "sensor-1")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c1, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	bodies := []string{`{"n":1}`, `{"n":2,"long":"` + strings.Repeat("x", 9000) + `"}`}
	for _, b := range bodies {
		if err := s.Write([]byte(b), 6); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(c1)
	for _, b := range bodies {
		checkSyslog(t, readFrame(t, c1, r), 16*8+6, b)
	}
	// The receiver goes away and comes back on the same port.
	c1.Close()
	ln.Close()
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln2.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	// The first write after the peer closed may still succeed (the kernel
	// buffers it before the RST arrives); within a few writes one fails and
	// the sink reconnects. Every later event reaches the new receiver.
	var c2 net.Conn
	for i := 0; i < 50 && c2 == nil; i++ {
		if err := s.Write([]byte(fmt.Sprintf(`{"probe":%d}`, i)), 6); err != nil {
			t.Fatalf("write %d after the restart: %v", i, err)
		}
		select {
		case c2 = <-accepted:
		case <-time.After(100 * time.Millisecond):
		}
	}
	if c2 == nil {
		t.Fatal("the sink never reconnected")
	}
	defer c2.Close()
	if err := s.Write([]byte(`{"n":3}`), 6); err != nil {
		t.Fatal(err)
	}
	r2 := bufio.NewReader(c2)
	var last string
	for i := 0; i < 60; i++ {
		last = readFrame(t, c2, r2)
		if strings.HasSuffix(last, `{"n":3}`) {
			break
		}
	}
	checkSyslog(t, last, 16*8+6, `{"n":3}`)
}

// readFrame reads one octet-counted frame.
func readFrame(t *testing.T, c net.Conn, r *bufio.Reader) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	n, err := r.ReadString(' ')
	if err != nil {
		t.Fatal(err)
	}
	size, err := strconv.Atoi(strings.TrimSuffix(n, " "))
	if err != nil {
		t.Fatalf("frame length %q", n)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	return string(buf)
}

func TestSyslogSeverity(t *testing.T) {
	evs := sampleEvents()
	want := []int{4, 3, 3, 5, 6, 4, 3, 4, 4, 6} // by the finding's severity; resolved: informational
	for i := range evs {
		if got := SyslogSeverity(&evs[i]); got != want[i] {
			t.Errorf("%s %s (%s): severity %d, want %d", evs[i].Action, evs[i].Finding.ID, evs[i].Finding.Severity, got, want[i])
		}
	}
}
