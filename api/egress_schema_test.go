package api

import (
	"reflect"

	"github.com/sandq/sandq/jobs"
)

// The schemas of the egress audit's parts (see EgressDoc), checked like
// the others by TestOpenAPISchemasMatchGoTypes.
func init() {
	documentedTypes["EgressDestination"] = reflect.TypeFor[jobs.EgressDestination]()
	documentedTypes["EgressRefusal"] = reflect.TypeFor[jobs.EgressRefusal]()
	documentedTypes["EgressOther"] = reflect.TypeFor[jobs.EgressOther]()
	documentedTypes["EgressBypass"] = reflect.TypeFor[jobs.EgressBypass]()
}
