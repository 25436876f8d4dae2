"""What a sweep learned: leaderboards, comparisons, promotion."""
