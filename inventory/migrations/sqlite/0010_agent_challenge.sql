-- What the server asked the agent to read back in this boot (deploy: chunks of the image's
-- content index with their expected hashes; wipe: sample ranges per disk), so a report is
-- checked against ranges the agent could not choose. Cleared with the agent's session.
ALTER TABLE jobs ADD COLUMN agent_challenge TEXT;
