package oona

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The publisher's connection speaks RESP2 itself rather than through
// go-redis. go-redis boxes every argument of every command in an interface
// value and writes it through a type switch; for a 256-entry XADD pipeline
// that cost the flusher more time than Redis spent on the XADDs, holding
// the publisher to 55-75% of redis-benchmark. The batch's commands are
// instead appended into one reusable buffer from the entries' strings and
// written with one syscall, and the replies (an entry ID or an error each)
// are read straight off a bufio.Reader. The consumer keeps go-redis: its
// commands (XREADGROUP, XAUTOCLAIM, XACK) are few and their replies rich.
// The options the connection honours are the ones ParseURL and
// Config.redisOptions produce: network and address, TLS, ACL user and
// password, database, dial/read/write timeouts.

// replyError is an error reply from Redis ("-ERR ...", "-WRONGTYPE ...").
// It is the server's word about one command, not a transport failure.
type replyError string

func (e replyError) Error() string { return string(e) }

// hasPrefix reports whether the reply starts with the error code prefix.
func (e replyError) hasPrefix(code string) bool {
	s := string(e)
	return len(s) >= len(code) && s[:len(code)] == code &&
		(len(s) == len(code) || s[len(code)] == ' ')
}

// errProtocol is returned (wrapped) for a reply the publisher cannot parse.
// The connection is closed after it: the stream of replies is lost.
var errProtocol = errors.New("oona: Redis protocol error")

// Default timeouts, as go-redis has them.
const (
	defaultIOTimeout   = 3 * time.Second
	defaultDialTimeout = 5 * time.Second
)

// respConn is one RESP2 connection. It is not safe for concurrent use.
type respConn struct {
	nc           net.Conn
	br           *bufio.Reader
	readTimeout  time.Duration
	writeTimeout time.Duration
}

// dialRESP connects to the Redis o describes and prepares the connection:
// AUTH (ACL user or default user), SELECT of a non-zero database and
// CLIENT SETNAME name (best effort: an ACL may forbid it).
func dialRESP(ctx context.Context, o *redis.Options, name string) (*respConn, error) {
	network := o.Network
	if network == "" {
		network = "tcp"
	}
	dialTimeout := o.DialTimeout
	if dialTimeout <= 0 {
		dialTimeout = defaultDialTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 5 * time.Minute}
	nc, err := d.DialContext(dctx, network, o.Addr)
	if err != nil {
		return nil, fmt.Errorf("oona: dialing %s %s: %w", network, o.Addr, err)
	}
	if o.TLSConfig != nil {
		tc := tls.Client(nc, o.TLSConfig.Clone())
		if err := tc.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("oona: TLS handshake with %s: %w", o.Addr, err)
		}
		nc = tc
	}
	c := &respConn{
		nc:           nc,
		br:           bufio.NewReaderSize(nc, 64<<10),
		readTimeout:  timeoutOr(o.ReadTimeout),
		writeTimeout: timeoutOr(o.WriteTimeout),
	}
	// The set-up commands go in one round trip.
	var buf []byte
	var what []string
	if o.Password != "" {
		if o.Username != "" {
			buf = appendCommand(buf, "AUTH", o.Username, o.Password)
		} else {
			buf = appendCommand(buf, "AUTH", o.Password)
		}
		what = append(what, "AUTH")
	}
	if o.DB != 0 {
		buf = appendCommand(buf, "SELECT", strconv.Itoa(o.DB))
		what = append(what, "SELECT "+strconv.Itoa(o.DB))
	}
	if name != "" {
		buf = appendCommand(buf, "CLIENT", "SETNAME", name)
		what = append(what, "CLIENT SETNAME")
	}
	if len(what) == 0 {
		return c, nil
	}
	stop := c.deadline(dctx)
	defer stop()
	if err := c.write(buf); err != nil {
		c.close()
		return nil, err
	}
	for _, w := range what {
		_, err := c.readReply()
		var re replyError
		switch {
		case errors.As(err, &re) && w == "CLIENT SETNAME":
			// The name only labels the connection in CLIENT LIST.
		case err != nil:
			c.close()
			return nil, fmt.Errorf("oona: %s on %s: %w", w, o.Addr, err)
		}
	}
	return c, nil
}

func timeoutOr(d time.Duration) time.Duration {
	if d <= 0 {
		return defaultIOTimeout
	}
	return d
}

// deadline sets the connection's read and write deadline from its timeouts
// and ctx, and makes ctx's end interrupt blocked I/O. The returned stop
// must be called when the I/O is over.
func (c *respConn) deadline(ctx context.Context) (stop func() bool) {
	d := time.Now().Add(max(c.readTimeout, c.writeTimeout))
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	_ = c.nc.SetDeadline(d)
	return context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
}

func (c *respConn) write(b []byte) error {
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("oona: writing to Redis: %w", err)
	}
	return nil
}

// readLine reads one reply's first line and returns its type byte and
// its body without the CRLF. An error means the connection is unusable.
func (c *respConn) readLine() (byte, []byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return 0, nil, fmt.Errorf("%w: reply line longer than %d bytes", errProtocol, c.br.Size())
		}
		return 0, nil, fmt.Errorf("oona: reading from Redis: %w", err)
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, nil, fmt.Errorf("%w: reply line %q not terminated by CRLF", errProtocol, line)
	}
	return line[0], line[1 : len(line)-2], nil
}

// readReply reads one reply. A bulk or simple string comes back as its
// text, an integer as its digits, an error reply as a replyError. Any
// other error means the connection is unusable.
func (c *respConn) readReply() (string, error) {
	kind, body, err := c.readLine()
	if err != nil {
		return "", err
	}
	switch kind {
	case '+', ':':
		return string(body), nil
	case '-':
		return "", replyError(body)
	case '$':
		// Only the set-up commands and PING come here: their replies
		// are short, and a longer one is not worth allocating for.
		n, ok := parseLen(body)
		if !ok || n > maxReplyBulk {
			return "", fmt.Errorf("%w: bulk length %q", errProtocol, body)
		}
		if n == -1 {
			return "", replyError("oona: nil reply")
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return "", fmt.Errorf("oona: reading from Redis: %w", err)
		}
		if b[n] != '\r' || b[n+1] != '\n' {
			return "", fmt.Errorf("%w: bulk string of %d bytes not terminated by CRLF", errProtocol, n)
		}
		return string(b[:n]), nil
	}
	return "", fmt.Errorf("%w: unexpected reply type %q", errProtocol, kind)
}

// skipBulk reads one reply where only its kind matters (an XADD's entry
// ID): it returns nil for a non-empty string, a replyError for an error
// reply, and another error when the connection is unusable. It does not
// allocate for the common case of an entry ID.
func (c *respConn) skipBulk() error {
	kind, body, err := c.readLine()
	if err != nil {
		return err
	}
	switch kind {
	case '-':
		return replyError(body)
	case '+':
		if len(body) == 0 {
			return replyError("oona: XADD returned no entry ID")
		}
		return nil
	case '$':
		n, ok := parseLen(body)
		if !ok {
			return fmt.Errorf("%w: bulk length %q", errProtocol, body)
		}
		if n <= 0 {
			return replyError("oona: XADD returned no entry ID")
		}
		if _, err := c.br.Discard(n); err != nil {
			return fmt.Errorf("oona: reading from Redis: %w", err)
		}
		crlf, err := c.br.Peek(2)
		if err != nil {
			return fmt.Errorf("oona: reading from Redis: %w", err)
		}
		if crlf[0] != '\r' || crlf[1] != '\n' {
			return fmt.Errorf("%w: bulk string of %d bytes not terminated by CRLF", errProtocol, n)
		}
		_, _ = c.br.Discard(2)
		return nil
	}
	return fmt.Errorf("%w: unexpected reply type %q to XADD", errProtocol, kind)
}

// maxReplyBulk bounds a bulk string readReply accepts.
const maxReplyBulk = 1 << 20

// parseLen parses a bulk length: -1 or a non-negative decimal up to 512 MiB.
func parseLen(b []byte) (int, bool) {
	if len(b) == 2 && b[0] == '-' && b[1] == '1' {
		return -1, true
	}
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	n := 0
	for _, ch := range b {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		n = n*10 + int(ch-'0')
	}
	return n, n <= 512<<20
}

func (c *respConn) close() error { return c.nc.Close() }

// appendCommand appends one command as a RESP array of bulk strings.
func appendCommand(b []byte, args ...string) []byte {
	b = appendArrayLen(b, len(args))
	for _, a := range args {
		b = appendBulk(b, a)
	}
	return b
}

func appendArrayLen(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

func appendBulk(b []byte, s string) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, '\r', '\n')
	b = append(b, s...)
	return append(b, '\r', '\n')
}
