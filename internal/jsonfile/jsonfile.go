// Package jsonfile decodes the app's JSON configuration files (host.json,
// function.json) with errors that say where the problem is.
package jsonfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Decode decodes data, the contents of the file called name, into v. A syntax
// error gives its line; a value of the wrong type names the property.
func Decode(name string, data []byte, v any) error {
	err := json.Unmarshal(data, v)
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &syntax):
		return fmt.Errorf("%s line %d: %v", name, 1+bytes.Count(data[:syntax.Offset], []byte("\n")), syntax)
	case errors.As(err, &typ) && typ.Field != "":
		return fmt.Errorf("%s: %s must be %s, not a JSON %s", name, typ.Field, kind(typ.Type.Kind().String()), typ.Value)
	case errors.As(err, &typ):
		return fmt.Errorf("%s must hold %s, not a JSON %s", name, kind(typ.Type.Kind().String()), typ.Value)
	}
	return fmt.Errorf("%s: %w", name, err)
}

func kind(goKind string) string {
	switch goKind {
	case "int", "int32", "int64":
		return "a whole number"
	case "struct", "map":
		return "a JSON object"
	case "slice":
		return "a JSON array"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	}
	return "a " + goKind
}
