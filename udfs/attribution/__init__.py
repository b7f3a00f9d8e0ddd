"""The closed loop's pure logic: holdouts, attribution of conversions, lift and the ROI rule.

``holdout`` assigns users to the global control group and to per-campaign holdouts by a stable
hash; ``attribution`` credits a conversion to the touches (sent or held-out triggers) in their
campaign's window and builds the CONVERTED ``CampaignOutcome`` of a credit; ``lift`` compares
the treated and held-out arms (Newcombe's interval for the difference of two proportions);
``roi`` turns measured revenue per send into the ROI the priority matrix uses. No Flink, no
Kafka: the engine keeps the state and calls these functions. The rules are written down in
``udfs/campaigns/CAMPAIGNS.md`` ("Attribution and holdouts").
"""
