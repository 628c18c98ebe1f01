package oona

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// redisSink XADDs each batch as one pipeline on its own RESP connection
// (resp.go): the commands are encoded into one buffer, written with one
// syscall, and the replies read in order. Each write or probe dials at
// most once, so the publisher's backoff alone paces reconnects.
type redisSink struct {
	opts   *redis.Options
	name   string // CLIENT SETNAME
	maxLen int64

	mu      sync.Mutex // the flusher and NewRedisBus's first probe
	conn    *respConn  // nil until dialled, and after any transport error
	buf     []byte     // the last batch's commands, reused
	maxArg  []byte     // MAXLEN's bulk string, encoded once
	dials   int        // connections dialled, for tests
	pending int        // batches sent whose replies are not read yet
}

func newRedisSink(opts *redis.Options, name string, maxLen int64) *redisSink {
	s := &redisSink{opts: opts, name: name, maxLen: maxLen}
	if maxLen > 0 {
		s.maxArg = appendBulk(nil, strconv.FormatInt(maxLen, 10))
	}
	return s
}

// connect returns the open connection or dials one.
func (s *redisSink) connect(ctx context.Context) (*respConn, error) {
	if s.conn != nil {
		return s.conn, nil
	}
	s.dials++
	c, err := dialRESP(ctx, s.opts, s.name)
	if err != nil {
		return nil, err
	}
	s.conn = c
	return c, nil
}

// drop closes a connection that failed: what it still holds is lost.
func (s *redisSink) drop() {
	if s.conn != nil {
		_ = s.conn.close()
		s.conn = nil
	}
	s.pending = 0
}

// Pre-encoded pieces of the XADD command.
var (
	bulkXADD   = appendBulk(nil, "XADD")
	bulkMaxLen = append(appendBulk(nil, "MAXLEN"), appendBulk(nil, "~")...)
	bulkStar   = appendBulk(nil, "*")
	bulkNames  = func() (out [numFields][]byte) {
		for k, n := range fieldNames {
			out[k] = appendBulk(nil, n)
		}
		return out
	}()
)

// appendXADD appends e's XADD: XADD stream [MAXLEN ~ n] * name value ...
// control.* streams are never trimmed: commands must not be lost to a
// trim before a host has read them.
func (s *redisSink) appendXADD(b []byte, e *entry) []byte {
	trim := s.maxArg != nil && !strings.HasPrefix(e.stream, "control.")
	n := 3 + 2*numFields
	if trim {
		n += 3
	}
	b = appendArrayLen(b, n)
	b = append(b, bulkXADD...)
	b = appendBulk(b, e.stream)
	if trim {
		b = append(b, bulkMaxLen...)
		b = append(b, s.maxArg...)
	}
	b = append(b, bulkStar...)
	for k := range e.vals {
		b = append(b, bulkNames[k]...)
		b = appendBulk(b, e.vals[k])
	}
	return b
}

// send writes batch's XADDs as one pipeline; recv reads their replies.
// Up to pipelineDepth batches are on the wire at once.
func (s *redisSink) send(ctx context.Context, batch []entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	buf := s.buf[:0]
	for i := range batch {
		buf = s.appendXADD(buf, &batch[i])
	}
	s.buf = buf
	if cap(s.buf) > 8<<20 {
		s.buf = nil // one huge batch does not pin its buffer
	}
	stop := c.deadline(ctx)
	err = c.write(buf)
	if !stop() || err != nil {
		// Some commands may have reached Redis: their retry can land
		// twice, which the consumer's de-duplication by event_id absorbs.
		s.drop()
		if err == nil {
			err = ctx.Err()
		}
		return err
	}
	s.pending++
	return nil
}

func (s *redisSink) recv(ctx context.Context, batch []entry) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	errs := make([]error, len(batch))
	fail := func(from int, err error) []error {
		for i := from; i < len(errs); i++ {
			errs[i] = err
		}
		return errs
	}
	c := s.conn
	if c == nil || s.pending == 0 {
		return fail(0, errors.New("oona: Redis connection lost before the replies were read"))
	}
	s.pending--
	stop := c.deadline(ctx)
	for i := range batch {
		err := c.skipBulk()
		var re replyError
		if err != nil && !errors.As(err, &re) {
			stop()
			s.drop()
			return fail(i, err)
		}
		errs[i] = err
	}
	if !stop() { // ctx ended while we read: the deadline is poisoned
		s.drop()
	}
	return errs
}

// abort drops the connection and the replies still owed on it.
func (s *redisSink) abort() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop()
}

// write sends batch and reads its replies: the sink used synchronously.
func (s *redisSink) write(ctx context.Context, batch []entry) []error {
	if err := s.send(ctx, batch); err != nil {
		errs := make([]error, len(batch))
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	return s.recv(ctx, batch)
}

// permanent: a reply error from the server that retrying cannot fix
// (WRONGTYPE, a syntax error). Transport errors and the server's transient
// states (LOADING, BUSY, OOM, READONLY, auth not yet configured) are retried.
func (s *redisSink) permanent(err error) bool {
	var re replyError
	if !errors.As(err, &re) {
		return false
	}
	for _, code := range transientCodes {
		if re.hasPrefix(code) {
			return false
		}
	}
	return re.hasPrefix("ERR") || re.hasPrefix("WRONGTYPE")
}

// transientCodes are error replies that retrying can outlast.
var transientCodes = []string{
	"LOADING", "BUSY", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN",
	"CLUSTERDOWN", "NOAUTH", "WRONGPASS", "NOPERM", "NOREPLICAS",
}

// probe checks that Redis answers, dialling if needed.
func (s *redisSink) probe(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending > 0 {
		return nil // replies are owed on the connection: it is in use
	}
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	stop := c.deadline(ctx)
	defer stop()
	if err := c.write(appendCommand(nil, "PING")); err != nil {
		s.drop()
		return err
	}
	if _, err := c.readReply(); err != nil {
		s.drop()
		return err
	}
	return nil
}

func (s *redisSink) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.close()
	s.conn = nil
	return err
}
