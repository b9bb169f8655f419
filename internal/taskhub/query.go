package taskhub

import (
	"time"

	"github.com/microsoft/durabletask-go/api"
)

// Query selects instances to list, newest first.
type Query struct {
	Statuses     []api.OrchestrationStatus // any of these; none: any status
	CreatedFrom  time.Time                 // created at or after; zero: no bound
	CreatedTo    time.Time                 // created at or before; zero: no bound
	IDPrefix     string                    // instance ids starting with this
	ExcludeNames []string                  // orchestrations of these names are left out
	PageSize     int
	FetchInput   bool
	// ContinuationToken is the previous page's; "" for the first page.
	ContinuationToken string
}

// Page is one page of a listing.
type Page struct {
	Instances []*api.OrchestrationMetadata
	// ContinuationToken asks for the next page; "" when this is the last.
	ContinuationToken string
}

// PageBytes bounds the payloads of one page, which can be large: a page
// ends early, with a continuation token, once it holds this much.
const PageBytes = 8 << 20

// PayloadBytes is what an instance's payloads add to a page.
func PayloadBytes(md *api.OrchestrationMetadata) int {
	return len(md.SerializedInput) + len(md.SerializedOutput) + len(md.SerializedCustomStatus)
}
