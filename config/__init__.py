"""Settings (environment variables prefixed ``SEGMENTER_``) and the segment rule files."""
