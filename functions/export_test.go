package functions

// FailOnPanic is failOnPanic, for tests of orchestrators that panic.
var FailOnPanic = failOnPanic
