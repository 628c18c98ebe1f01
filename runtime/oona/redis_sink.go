package oona

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// redisSink XADDs batches through one pipeline per batch. Only the
// flusher goroutine calls write, so the argument buffer is reused.
type redisSink struct {
	client *redis.Client
	maxLen int64

	args    []any // arguments of every XADD of the last batch, reused
	streams map[string]any
	cmds    []*redis.StringCmd
}

// streamArg returns the stream name as an interface value, boxed once per
// stream rather than once per entry.
func (s *redisSink) streamArg(stream string) any {
	if a, ok := s.streams[stream]; ok {
		return a
	}
	if s.streams == nil || len(s.streams) > 64 {
		s.streams = make(map[string]any)
	}
	a := any(stream)
	s.streams[stream] = a
	return a
}

func (s *redisSink) write(ctx context.Context, batch []entry) []error {
	pipe := s.client.Pipeline()
	const perEntry = 6 + 2*numFields // xadd stream [maxlen ~ n] * name value ...
	if cap(s.args) < perEntry*len(batch) {
		s.args = make([]any, 0, perEntry*len(batch))
	}
	args := s.args[:0] // never grows below: the commands keep subslices
	cmds := s.cmds[:0]
	for i := range batch {
		e := &batch[i]
		start := len(args)
		args = append(args, "xadd", s.streamArg(e.stream))
		if s.maxLen > 0 && !strings.HasPrefix(e.stream, "control.") {
			args = append(args, "maxlen", "~", &s.maxLen)
		}
		args = append(args, "*")
		// Values go in as *string: a pointer needs no allocation to
		// become an interface value, a string does. The batch outlives
		// the pipeline.
		for k := range e.vals {
			args = append(args, fieldNameArgs[k], &e.vals[k])
		}
		cmd := redis.NewStringCmd(ctx, args[start:len(args):len(args)]...)
		_ = pipe.Process(ctx, cmd)
		cmds = append(cmds, cmd)
	}
	_, execErr := pipe.Exec(ctx)
	errs := make([]error, len(batch))
	for i, c := range cmds {
		err := c.Err()
		if err == nil && c.Val() == "" {
			// go-redis leaves the commands untouched when the connection
			// fails to initialise (a WRONGPASS during HELLO): no entry ID
			// means not delivered.
			err = execErr
			if err == nil {
				err = errors.New("oona: XADD returned no entry ID")
			}
		}
		errs[i] = err
	}
	// Drop the references to this batch's entries and commands.
	clear(args)
	clear(cmds)
	s.args, s.cmds = args[:0], cmds[:0]
	return errs
}

// permanent: a reply error from the server that retrying cannot fix
// (WRONGTYPE, a syntax error). Transport errors and the server's transient
// states (LOADING, BUSY, OOM, READONLY, auth not yet configured) are retried.
func (s *redisSink) permanent(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	if redis.HasErrorPrefix(err, "LOADING") || redis.HasErrorPrefix(err, "BUSY") ||
		redis.HasErrorPrefix(err, "OOM") || redis.HasErrorPrefix(err, "READONLY") ||
		redis.HasErrorPrefix(err, "MASTERDOWN") || redis.HasErrorPrefix(err, "TRYAGAIN") ||
		redis.HasErrorPrefix(err, "CLUSTERDOWN") || redis.HasErrorPrefix(err, "NOAUTH") ||
		redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOPERM") ||
		redis.HasErrorPrefix(err, "NOREPLICAS") {
		return false
	}
	// A reply error carrying a transport failure is not the server's word.
	return strings.HasPrefix(re.Error(), "ERR") || strings.HasPrefix(re.Error(), "WRONGTYPE")
}

func (s *redisSink) probe(ctx context.Context) error {
	return s.client.Ping(ctx).Err()
}

func (s *redisSink) close() error { return s.client.Close() }
