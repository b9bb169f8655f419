package functions

import (
	"reflect"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
)

// Fanouts are the app's fan-outs. Each exported method of Fanouts, in
// whichever file of this package, adds one: it reads the fan-out's own
// settings through p, whose problems are reported at start with every other
// setting's, and returns how to register the fan-out. So a fan-out of your
// own is one file holding such a method, plus its function.json; sample.go
// holds the seeds' fan-out.
type Fanouts struct{}

// Registration registers a fan-out with the engine.
type Registration func(*fanout.Engine) error

// ReadFanouts reads every fan-out's settings, in the order of the methods'
// names, and returns their registrations.
func ReadFanouts(p *config.Parser) []Registration {
	v := reflect.ValueOf(Fanouts{})
	var regs []Registration
	for i := range v.NumMethod() {
		read, ok := v.Method(i).Interface().(func(*config.Parser) Registration)
		if !ok {
			p.Fail("functions.Fanouts.%s is a %s: a fan-out's method must be a func(*config.Parser) functions.Registration", v.Type().Method(i).Name, v.Method(i).Type())
			continue
		}
		regs = append(regs, read(p))
	}
	return regs
}

// Register registers every fan-out with the engine.
func Register(e *fanout.Engine, regs []Registration) error {
	for _, register := range regs {
		if err := register(e); err != nil {
			return err
		}
	}
	return nil
}
