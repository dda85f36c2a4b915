// kstatus-check prints how sigs.k8s.io/cli-utils' kstatus library (the one Flux, kpt and
// `kubectl apply --prune` tooling use) reads each object of a JSON list on stdin: one line
// of {"status": ..., "message": ...} per object.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	var objects []json.RawMessage
	if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check: stdin must be a JSON list of objects:", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, raw := range objects {
		// Unstructured's own decoder keeps integers int64, as the library expects.
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus-check:", err)
			os.Exit(2)
		}
		result, err := status.Compute(object)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus-check:", err)
			os.Exit(1)
		}
		_ = out.Encode(map[string]string{"status": string(result.Status), "message": result.Message})
	}
}
