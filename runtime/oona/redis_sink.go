package oona

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// redisSink XADDs each batch as one go-redis pipeline on the publisher's
// own client. That client is the consumer's options (TLS, ACL user and
// password, database, timeouts: Config.redisOptions) with the publisher's
// name and without go-redis's retries: the flusher retries, in order, with
// its own backoff, and each of its attempts dials at most once.
type redisSink struct {
	client *redis.Client
	maxLen any // MAXLEN's argument, or nil: never trim

	// The last batch's arguments and commands, reused by the next: only
	// the flusher writes.
	args  []any
	xadds []*redis.StringCmd
	cmds  []redis.Cmder
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

// write sends batch as one pipeline and returns each entry's result. An
// entry is delivered when its XADD's reply, a stream ID, was read: even
// when the connection failed after it (go-redis then stamps the transport
// error on every command of the pipeline), so that only the entries
// without a reply are sent again.
func (s *redisSink) write(ctx context.Context, batch []entry) []error {
	defer s.closeWhenDone(ctx)()
	if n := len(batch) * xaddLen; cap(s.args) < n {
		s.args = make([]any, 0, n)
	}
	args, xadds, cmds := s.args[:0], s.xadds[:0], s.cmds[:0]
	for i := range batch {
		at := len(args)
		args = s.appendXADD(args, &batch[i])
		x := redis.NewStringCmd(ctx, args[at:len(args):len(args)]...)
		xadds, cmds = append(xadds, x), append(cmds, x)
	}
	pipe := s.client.Pipeline()
	_ = pipe.BatchProcess(ctx, cmds...)
	_, execErr := pipe.Exec(ctx)
	defer func() {
		// The commands are done with: keep the slices, not what they hold.
		clear(args)
		clear(xadds)
		clear(cmds)
		s.args, s.xadds, s.cmds = args[:0], xadds[:0], cmds[:0]
	}()
	errs := make([]error, len(batch))
	for i, c := range xadds {
		switch {
		case c.Val() != "":
		case c.Err() != nil:
			errs[i] = c.Err()
		case execErr != nil:
			// Not sent: setting the connection up failed with a reply
			// (WRONGPASS, or ERR for a database out of range), which
			// go-redis does not stamp on the commands. That is no
			// verdict on the entries, so it must not read as permanent.
			errs[i] = fmt.Errorf("oona: setting up the Redis connection: %v", execErr)
		default:
			errs[i] = errNoStreamID
		}
	}
	return errs
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
// is called: go-redis bounds a read by ReadTimeout, not by ctx, and closing
// the client is what interrupts one blocked on a Redis that does not
// answer. The flusher's ctx ends only when the bus closes.
func (s *redisSink) closeWhenDone(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() { _ = s.client.Close() })
}

func (s *redisSink) close() error {
	if err := s.client.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return err
	}
	return nil
}
