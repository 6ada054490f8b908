package storage

import (
	"context"
	"errors"
	"fmt"
)

// ErrAccessDenied is returned when the store refuses the credentials an
// action (S3 AccessDenied).
var ErrAccessDenied = errors.New("access denied")

// EnsurePrefixExpiry makes sure objects under prefix are kept at least days
// days. A sandq rule for prefix that keeps them that long or longer is left
// as it is: then the credentials need only s3:GetLifecycleConfiguration, so
// workers can run without the right to change the bucket's lifecycle once
// the rule was set by `sandq s3 setup`. A missing or shorter rule is set
// (SetPrefixExpiry), which needs s3:PutLifecycleConfiguration; it reports
// whether it set one. Errors name the missing permission and wrap
// ErrAccessDenied.
func (s *Store) EnsurePrefixExpiry(ctx context.Context, prefix string, days int) (bool, error) {
	if days < 1 {
		return false, fmt.Errorf("expiry of %s: %d days, want at least 1", prefix, days)
	}
	have, err := s.PrefixExpiry(ctx, prefix)
	if err != nil {
		if errors.Is(err, ErrAccessDenied) {
			return false, fmt.Errorf("%w; the credentials need s3:GetLifecycleConfiguration on bucket %s", err, s.bucket)
		}
		return false, err
	}
	if have >= days {
		return false, nil
	}
	if err := s.SetPrefixExpiry(ctx, prefix, days); err != nil {
		if !errors.Is(err, ErrAccessDenied) {
			return false, err
		}
		rule := fmt.Sprintf("no expiry rule for %s", prefix)
		if have > 0 {
			rule = fmt.Sprintf("an expiry rule for %s of %d days", prefix, have)
		}
		return false, fmt.Errorf("bucket %s has %s, and objects there must be kept %d days; these credentials may not set it (s3:PutLifecycleConfiguration): "+
			"run `sandq s3 setup` with the store's admin credentials and the same retention settings, or grant that action: %w", s.bucket, rule, days, err)
	}
	return true, nil
}
