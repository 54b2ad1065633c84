"""Pure computation for streamseg: events, features, preprocessing, segmenter, labels.

Nothing in this package imports Kafka or Redis.
"""
