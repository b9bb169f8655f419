package fanout

// PlanFor is what Start would schedule for req, without scheduling it.
func (c *Client) PlanFor(name string, req Request) (Plan, error) {
	k := c.e.kind(name)
	return c.plan(k, req)
}
