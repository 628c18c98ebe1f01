package main

import (
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

func (e *envFlags) Bool(p *bool, name, env string, def bool, usage string) {
	if v, ok := e.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q is not a boolean", env, v))
		} else {
			def = b
		}
	}
	e.fs.BoolVar(p, name, def, usage+" [$"+env+"]")
}

func (e *envFlags) Int(p *int, name, env string, def int, usage string) {
	if v, ok := e.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q is not an integer", env, v))
		} else {
			def = n
		}
	}
	e.fs.IntVar(p, name, def, usage+" [$"+env+"]")
}

func (e *envFlags) Int64(p *int64, name, env string, def int64, usage string) {
	if v, ok := e.env(env); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q is not an integer", env, v))
		} else {
			def = n
		}
	}
	e.fs.Int64Var(p, name, def, usage+" [$"+env+"]")
}

func (e *envFlags) Float(p *float64, name, env string, def float64, usage string) {
	if v, ok := e.env(env); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q is not a number", env, v))
		} else {
			def = f
		}
	}
	e.fs.Float64Var(p, name, def, usage+" [$"+env+"]")
}

func (e *envFlags) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	if v, ok := e.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			e.errs = append(e.errs, fmt.Errorf("%s=%q is not a duration (e.g. 30s)", env, v))
		} else {
			def = d
		}
	}
	e.fs.DurationVar(p, name, def, usage+" [$"+env+"]")
}

// err returns the first bad environment value.
func (e *envFlags) err() error {
	if len(e.errs) > 0 {
		return e.errs[0]
	}
	return nil
}
