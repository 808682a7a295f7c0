"""The loop's steps (pretrain, train, score, propose, predict, sync): load -> compute -> record."""
