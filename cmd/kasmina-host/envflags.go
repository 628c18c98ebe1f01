package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

// envFlags registers flags whose defaults come from KASMINA_* (or other)
// environment variables, so that a flag wins over the environment and the
// environment over the built-in default. Bad environment values are
// collected and reported as usage errors naming the variable.
type envFlags struct {
	fs   *flag.FlagSet
	errs []error
}

func (e *envFlags) env(name string) (string, bool) {
	v, ok := os.LookupEnv(name)
	return v, ok && v != ""
}

func (e *envFlags) String(p *string, name, env, def, usage string) {
	if v, ok := e.env(env); ok {
		def = v
	}
	e.fs.StringVar(p, name, def, usage+" [$"+env+"]")
}

// envDefault returns def, or env's value parsed when it is set; a value
// that does not parse is recorded (as "ENV="v" is not KIND") and def kept.
func envDefault[T any](e *envFlags, env string, def T, parse func(string) (T, error), kind string) T {
	v, ok := e.env(env)
	if !ok {
		return def
	}
	x, err := parse(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not %s", env, v, kind))
		return def
	}
	return x
}

func (e *envFlags) Bool(p *bool, name, env string, def bool, usage string) {
	e.fs.BoolVar(p, name, envDefault(e, env, def, strconv.ParseBool, "a boolean"), usage+" [$"+env+"]")
}

func (e *envFlags) Int(p *int, name, env string, def int, usage string) {
	e.fs.IntVar(p, name, envDefault(e, env, def, strconv.Atoi, "an integer"), usage+" [$"+env+"]")
}

func (e *envFlags) Int64(p *int64, name, env string, def int64, usage string) {
	parse := func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) }
	e.fs.Int64Var(p, name, envDefault(e, env, def, parse, "an integer"), usage+" [$"+env+"]")
}

func (e *envFlags) Float(p *float64, name, env string, def float64, usage string) {
	parse := func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }
	e.fs.Float64Var(p, name, envDefault(e, env, def, parse, "a number"), usage+" [$"+env+"]")
}

func (e *envFlags) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	e.fs.DurationVar(p, name, envDefault(e, env, def, time.ParseDuration, "a duration (e.g. 30s)"), usage+" [$"+env+"]")
}

// err returns every bad environment value, joined (nil when there is none),
// so that an operator fixes them all in one go.
func (e *envFlags) err() error { return errors.Join(e.errs...) }
