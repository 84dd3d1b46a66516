"""The static leaderboard builder."""
