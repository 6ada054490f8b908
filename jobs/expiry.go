package jobs

import "time"

// ObjectExpiryDays is how long the object store keeps job files (the expiry
// rule of storage.ObjectPrefix): a day more than the longer of the result
// retention and the link expiry, in whole days, so files outlive neither
// the job's result nor its links by more than a day.
func (c Config) ObjectExpiryDays() int {
	c = c.WithDefaults()
	keep := max(c.ResultRetention, c.LinkExpiry)
	return int((keep+24*time.Hour-1)/(24*time.Hour)) + 1
}
