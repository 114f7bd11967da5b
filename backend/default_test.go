package backend

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// wantSegmentKind and wantSemaphoreKind come from tiny tag files beside
// this one, so the matrix proves that each tag set picks its defaults.
func TestDefaultKindsFollowBuildTags(t *testing.T) {
	require.Equal(t, wantSegmentKind, DefaultSegmentKind())
	require.Equal(t, wantSemaphoreKind, DefaultSemaphoreKind())
}
