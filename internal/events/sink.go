package events

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowaudit/flowaudit/audit"
)

// Sink receives encoded events, one JSON object per call.
type Sink interface {
	// Write delivers one event (without a trailing newline).
	Write(event []byte, severity int) error
	// Reopen reopens a file sink (after logrotate moved it); other sinks
	// do nothing.
	Reopen() error
	Close() error
	// String names the target in diagnostics.
	String() string
}

// Open parses a --events target and opens it: "-" is stdout, "syslog://…"
// (see ParseSyslog) a syslog receiver, anything else a file path, created
// if needed (mode 0640) and appended to. A syslog target over TCP is
// connected at once, so a wrong address fails before anything starts.
func Open(target string, stdout io.Writer, hostname string) (Sink, error) {
	switch {
	case target == "":
		return nil, errors.New("--events: empty target")
	case target == "-":
		return &writerSink{w: stdout}, nil
	case strings.HasPrefix(target, "syslog"):
		cfg, err := ParseSyslog(target)
		if err != nil {
			return nil, err
		}
		cfg.Hostname = hostname
		return dialSyslog(cfg)
	case strings.Contains(target, "://"):
		return nil, fmt.Errorf("--events %q: unknown scheme (want a file path, - or syslog://)", target)
	}
	return openFile(target)
}

// writerSink writes lines to a stream (stdout).
type writerSink struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *writerSink) Write(ev []byte, _ int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.w.Write(append(ev[:len(ev):len(ev)], '\n'))
	return err
}
func (s *writerSink) Reopen() error  { return nil }
func (s *writerSink) Close() error   { return nil }
func (s *writerSink) String() string { return "stdout" }

// fileSink appends lines to a file. Each line is one write(2) on an
// O_APPEND descriptor, so a concurrent reader (a shipper tailing the file)
// never sees half a line and copytruncate rotation works too.
type fileSink struct {
	mu   sync.Mutex
	path string
	f    *os.File
}

func openFile(path string) (*fileSink, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("--events: %w", err)
	}
	return &fileSink{path: path, f: f}, nil
}

func (s *fileSink) Write(ev []byte, _ int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.f.Write(append(ev[:len(ev):len(ev)], '\n'))
	return err
}

// Reopen opens the path again (a new file if logrotate moved the old one)
// and switches to it; on failure the old descriptor stays in use.
func (s *fileSink) Reopen() error {
	n, err := openFile(s.path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	old := s.f
	s.f = n.f
	s.mu.Unlock()
	return old.Close()
}

func (s *fileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Close()
}

func (s *fileSink) String() string { return s.path }

// SyslogConfig is a parsed syslog target.
type SyslogConfig struct {
	// Network is "unixgram", "unix", "udp" or "tcp"; Addr the socket path
	// or host:port.
	Network, Addr string
	// Facility is the syslog facility number (default 16, local0).
	Facility int
	// AppName is the RFC 5424 APP-NAME (default "flowaudit").
	AppName string
	// Hostname is the RFC 5424 HOSTNAME (the observer's).
	Hostname string
}

var facilities = map[string]int{
	"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8, "cron": 9,
	"authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "local0": 16, "local1": 17, "local2": 18,
	"local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

// ParseSyslog parses a syslog target:
//
//	syslog://                  the local syslog socket, /dev/log
//	syslog:///run/some.sock    a unix socket (datagram, else stream)
//	syslog+udp://HOST:PORT     UDP (port default 514); syslog://HOST:PORT too
//	syslog+tcp://HOST:PORT     TCP with octet-counting framing (RFC 6587; port default 514)
//
// with optional ?facility=NAME (default local0) and &app=NAME.
func ParseSyslog(target string) (SyslogConfig, error) {
	bad := func(format string, a ...any) (SyslogConfig, error) {
		return SyslogConfig{}, fmt.Errorf("--events %q: %s", target, fmt.Sprintf(format, a...))
	}
	u, err := url.Parse(target)
	if err != nil {
		return bad("%v", err)
	}
	cfg := SyslogConfig{Facility: facilities["local0"], AppName: "flowaudit"}
	q := u.Query()
	for k, v := range q {
		switch k {
		case "facility":
			f, ok := facilities[strings.ToLower(v[0])]
			if !ok {
				return bad("unknown facility %q (want kern … local7)", v[0])
			}
			cfg.Facility = f
		case "app":
			if !printable(v[0], 48) {
				return bad("app %q: 1 to 48 printable ASCII characters", v[0])
			}
			cfg.AppName = v[0]
		default:
			return bad("unknown parameter %q (want facility or app)", k)
		}
	}
	if u.User != nil || u.Fragment != "" {
		return bad("user or fragment not allowed")
	}
	hostPort := func() (string, error) {
		if u.Host == "" || u.Path != "" {
			return "", fmt.Errorf("want %s://HOST:PORT", u.Scheme)
		}
		h := u.Host
		if u.Port() == "" {
			h = net.JoinHostPort(u.Hostname(), "514")
		} else if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
			return "", fmt.Errorf("port %q", u.Port())
		}
		return h, nil
	}
	switch u.Scheme {
	case "syslog":
		switch {
		case u.Host == "" && u.Path == "":
			cfg.Network, cfg.Addr = "unixgram", "/dev/log"
		case u.Host == "":
			cfg.Network, cfg.Addr = "unixgram", u.Path
		default:
			h, err := hostPort()
			if err != nil {
				return bad("%v", err)
			}
			cfg.Network, cfg.Addr = "udp", h
		}
	case "syslog+udp", "syslog+tcp":
		h, err := hostPort()
		if err != nil {
			return bad("%v", err)
		}
		cfg.Network, cfg.Addr = strings.TrimPrefix(u.Scheme, "syslog+"), h
	case "syslog+unix":
		if u.Host != "" || u.Path == "" {
			return bad("want syslog+unix:///PATH")
		}
		cfg.Network, cfg.Addr = "unixgram", u.Path
	default:
		return bad("unknown scheme %q (want syslog, syslog+udp, syslog+tcp or syslog+unix)", u.Scheme)
	}
	return cfg, nil
}

func printable(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, c := range []byte(s) {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// syslogSink sends RFC 5424 messages, one per datagram or, on a stream,
// octet-counted. A message that cannot be sent is sent once more on a new
// socket (the receiver restarted); if that fails too, it is an error.
type syslogSink struct {
	mu   sync.Mutex
	cfg  SyslogConfig
	conn net.Conn
	pid  int
}

func dialSyslog(cfg SyslogConfig) (*syslogSink, error) {
	s := &syslogSink{cfg: cfg, pid: os.Getpid()}
	if err := s.dial(); err != nil {
		return nil, fmt.Errorf("--events: syslog %s %s: %w", cfg.Network, cfg.Addr, err)
	}
	return s, nil
}

func (s *syslogSink) dial() error {
	netw := s.cfg.Network
	c, err := net.DialTimeout(netw, s.cfg.Addr, 5*time.Second)
	if err != nil && netw == "unixgram" {
		// A stream socket (some syslog daemons listen so).
		var err2 error
		if c, err2 = net.DialTimeout("unix", s.cfg.Addr, 5*time.Second); err2 == nil {
			s.cfg.Network, err = "unix", nil
		}
	}
	if err != nil {
		return err
	}
	s.conn = c
	return nil
}

// Message formats one RFC 5424 message:
// <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG, MSG being the
// JSON event (MSG-ANY: no BOM, so that receivers can parse it as JSON).
func (c *SyslogConfig) Message(t time.Time, pid, severity int, msgid string, ev []byte) []byte {
	host := c.Hostname
	if !printable(host, 255) {
		host = "-"
	}
	if !printable(msgid, 32) {
		msgid = "-"
	}
	hdr := fmt.Sprintf("<%d>1 %s %s %s %d %s - ", c.Facility*8+severity,
		t.UTC().Format("2006-01-02T15:04:05.000000Z07:00"), host, c.AppName, pid, msgid)
	return append([]byte(hdr), ev...)
}

func (s *syslogSink) Write(ev []byte, severity int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := s.cfg.Message(time.Now(), s.pid, severity, "finding", ev)
	send := func() error {
		if s.conn == nil {
			if err := s.dial(); err != nil {
				return err
			}
		}
		frame := msg
		if s.stream() {
			// Octet counting (RFC 6587 3.4.1): a message may hold newlines.
			frame = append([]byte(strconv.Itoa(len(msg))+" "), msg...)
		}
		// One write: one datagram, or one frame that a stuck receiver
		// cannot hold up for long.
		s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck // not every conn has deadlines
		_, err := s.conn.Write(frame)
		return err
	}
	err := send()
	if err != nil && s.conn != nil {
		// The receiver restarted (a new socket, a new connection): dial
		// again, send once more.
		s.conn.Close()
		s.conn = nil
		err = send()
	}
	if err != nil {
		return fmt.Errorf("syslog %s %s: %w", s.cfg.Network, s.cfg.Addr, err)
	}
	return nil
}

func (s *syslogSink) stream() bool { return s.cfg.Network == "tcp" || s.cfg.Network == "unix" }

func (s *syslogSink) Reopen() error { return nil }

func (s *syslogSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	return s.conn.Close()
}

func (s *syslogSink) String() string { return "syslog " + s.cfg.Network + " " + s.cfg.Addr }

// SyslogSeverity is the RFC 5424 severity of an event: error (3) for a
// high finding, warning (4) medium, notice (5) low, informational (6) for
// info findings and every resolution.
func SyslogSeverity(ev *Event) int {
	if ev.Action == Resolved {
		return 6
	}
	switch ev.Finding.Severity {
	case audit.High:
		return 3
	case audit.Medium:
		return 4
	case audit.Low:
		return 5
	}
	return 6
}
