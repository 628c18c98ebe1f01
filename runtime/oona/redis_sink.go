package oona

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// redisSink XADDs each batch as one go-redis pipeline on the publisher's
// own client. That client is the consumer's options (TLS, ACL user and
// password, database, timeouts: Config.redisOptions) with the publisher's
// name and without go-redis's retries: the flusher retries, in order, with
// its own backoff, and each of its attempts dials at most once.
//
// It is a pipeline of depth pipelineDepth: send builds a batch's commands
// on the flusher's goroutine and hands them to an executor goroutine,
// which runs the pipelines one after the other on one connection, so that
// Redis starts on the next batch as soon as it has answered the last one
// instead of waiting for the flusher to settle and build it. After a batch
// with an entry to send again, the executor fails the batches behind it
// without sending them, so that the retry keeps their order.
type redisSink struct {
	client *redis.Client
	maxLen any // MAXLEN's argument, or nil: never trim

	// Owned by the flusher's goroutine.
	pending []*flight // sent, not received, oldest first
	free    []*flight // received, to be reused
	flights chan *flight
	exited  chan struct{} // closed when the executor returns; nil before it starts

	broken atomic.Bool // a batch failed: fail the ones behind it unsent, until abort
}

// flight is one batch on its way: a copy of its entries (its commands
// point into them, and the flusher's own list moves while they run), its
// commands and, once done is closed, its results.
type flight struct {
	ctx     context.Context
	entries []entry
	args    []any
	xadds   []*redis.StringCmd
	cmds    []redis.Cmder
	errs    []error
	done    chan struct{}
}

func newRedisSink(opts *redis.Options, name string, maxLen int64) *redisSink {
	o := *opts
	o.ClientName = name
	o.MaxRetries = -1
	noDialRetries(&o)
	// Pipelines on the main pool, which the PING probes use too: the
	// flusher has one batch on one connection at a time.
	o.PipelinePoolSize = -1
	// RESP2: an XADD's reply is the same, and go-redis then does not look
	// for RESP3 push notifications before every reply.
	o.Protocol = 2
	// A deadline on ctx bounds a command too, not only ReadTimeout.
	o.ContextTimeoutEnabled = true
	s := &redisSink{client: redis.NewClient(&o)}
	if maxLen > 0 {
		s.maxLen = strconv.FormatInt(maxLen, 10)
	}
	return s
}

// The XADD arguments that are the same for every entry, boxed once.
var (
	argXADD, argMAXLEN, argApprox, argStar any = "xadd", "maxlen", "~", "*"
	argNames                                   = func() (out [numFields]any) {
		for k, n := range fieldNames {
			out[k] = n
		}
		return out
	}()
)

// xaddLen is the most arguments of one XADD: XADD stream MAXLEN ~ n * and
// a name and a value per field.
const xaddLen = 6 + 2*numFields

// appendXADD appends e's XADD: XADD stream [MAXLEN ~ n] * name value ...
// control.* streams are never trimmed: commands must not be lost to a
// trim before a host has read them. The entry's strings go in as
// pointers, which an interface holds without a copy (go-redis writes a
// *string as the string); e must not change until the command is written.
func (s *redisSink) appendXADD(args []any, e *entry) []any {
	args = append(args, argXADD, &e.stream)
	if s.maxLen != nil && !strings.HasPrefix(e.stream, "control.") {
		args = append(args, argMAXLEN, argApprox, s.maxLen)
	}
	args = append(args, argStar)
	for k := range e.vals {
		args = append(args, argNames[k], &e.vals[k])
	}
	return args
}

// send builds batch's commands and queues them for the executor.
func (s *redisSink) send(ctx context.Context, batch []entry) error {
	var f *flight
	if n := len(s.free); n > 0 {
		f, s.free = s.free[n-1], s.free[:n-1]
	} else {
		f = &flight{}
	}
	f.ctx, f.done = ctx, make(chan struct{})
	f.entries = append(f.entries[:0], batch...)
	if n := len(batch) * xaddLen; cap(f.args) < n {
		f.args = make([]any, 0, n)
	}
	f.args, f.xadds, f.cmds = f.args[:0], f.xadds[:0], f.cmds[:0]
	for i := range f.entries {
		at := len(f.args)
		f.args = s.appendXADD(f.args, &f.entries[i])
		x := redis.NewStringCmd(ctx, f.args[at:len(f.args):len(f.args)]...)
		f.xadds, f.cmds = append(f.xadds, x), append(f.cmds, x)
	}
	if s.exited == nil {
		s.flights, s.exited = make(chan *flight, pipelineDepth), make(chan struct{})
		go s.execute()
	}
	s.pending = append(s.pending, f)
	s.flights <- f
	return nil
}

// recv waits for the oldest batch sent and returns its results.
func (s *redisSink) recv(_ context.Context, _ []entry) []error {
	f := s.pending[0]
	s.pending = s.pending[1:]
	<-f.done
	errs := f.errs
	s.release(f)
	return errs
}

// abort waits out the batches still pending (the executor fails them
// unsent once one has failed) and lets the next batch go out again.
func (s *redisSink) abort() {
	for _, f := range s.pending {
		<-f.done
		s.release(f)
	}
	s.pending = s.pending[:0]
	s.broken.Store(false)
}

// release keeps f for reuse, without what its commands held.
func (s *redisSink) release(f *flight) {
	clear(f.entries)
	clear(f.args)
	clear(f.xadds)
	clear(f.cmds)
	s.free = append(s.free, f)
}

// write sends batch and waits for its results: the sink used on its own.
func (s *redisSink) write(ctx context.Context, batch []entry) []error {
	_ = s.send(ctx, batch)
	return s.recv(ctx, batch)
}

// execute runs the flights in the order they were sent.
func (s *redisSink) execute() {
	defer close(s.exited)
	for f := range s.flights {
		f.errs = make([]error, len(f.xadds))
		if s.broken.Load() {
			for i := range f.errs {
				f.errs[i] = errNotSent
			}
		} else {
			s.exec(f)
			for _, err := range f.errs {
				if err != nil && !s.permanent(err) {
					s.broken.Store(true)
					break
				}
			}
		}
		close(f.done)
	}
}

// errNotSent: a batch behind one that failed, held back to keep the order.
var errNotSent = errors.New("oona: not sent: an earlier batch failed")

// exec runs f's pipeline and fills f.errs. An entry is delivered when its
// XADD's reply, a stream ID, was read: even when the connection failed
// after it (go-redis then stamps the transport error on every command of
// the pipeline), so that only the entries without a reply are sent again.
func (s *redisSink) exec(f *flight) {
	defer s.closeWhenDone(f.ctx)()
	pipe := s.client.Pipeline()
	_ = pipe.BatchProcess(f.ctx, f.cmds...)
	_, execErr := pipe.Exec(f.ctx)
	for i, c := range f.xadds {
		switch {
		case c.Val() != "":
		case c.Err() != nil:
			f.errs[i] = c.Err()
		case execErr != nil:
			// Not sent: setting the connection up failed with a reply
			// (WRONGPASS, or ERR for a database out of range), which
			// go-redis does not stamp on the commands. That is no
			// verdict on the entries, so it must not read as permanent.
			f.errs[i] = fmt.Errorf("oona: setting up the Redis connection: %v", execErr)
		default:
			f.errs[i] = errNoStreamID
		}
	}
}

// errNoStreamID: an XADD answered without an error and without an ID.
var errNoStreamID = errors.New("oona: XADD returned no stream ID")

// permanent: an error reply that retrying cannot fix (WRONGTYPE, ERR for a
// malformed command). Transport errors and the server's transient states
// (LOADING, BUSY, OOM, READONLY, NOAUTH, WRONGPASS, NOPERM, ...) are
// retried.
func (s *redisSink) permanent(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	code, _, _ := strings.Cut(re.Error(), " ")
	return code == "ERR" || code == "WRONGTYPE"
}

// probe checks that Redis answers, dialling if needed.
func (s *redisSink) probe(ctx context.Context) error {
	defer s.closeWhenDone(ctx)()
	return s.client.Ping(ctx).Err()
}

// closeWhenDone closes the client when ctx ends before the returned stop
// is called: go-redis bounds a read by ReadTimeout and by ctx's deadline,
// not by its cancellation, and closing the client is what interrupts one
// blocked on a Redis that does not answer. The flusher's ctx is cancelled
// only when the bus closes.
func (s *redisSink) closeWhenDone(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() { _ = s.client.Close() })
}

func (s *redisSink) close() error {
	if s.exited != nil {
		close(s.flights)
		<-s.exited
		s.exited = nil
	}
	if err := s.client.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return err
	}
	return nil
}
