package fanout

// PlanFor is what Start would schedule for req, without scheduling it.
func (c *Client) PlanFor(name string, req Request) (Plan, error) {
	k := c.e.kind(name)
	return c.plan(k, req)
}

// WorkJSON and PlainJSON are the hand-written encodings, for checking them
// against encoding/json.
var (
	WorkJSON  = workJSON
	PlainJSON = plainJSON
)

// ReadWork reads a work activity's input: the item, its index and attempt.
func ReadWork(raw []byte) (item []byte, index, attempt int, err error) {
	in, index, err := readWork(raw)
	return in.Item, index, in.Attempt, err
}
