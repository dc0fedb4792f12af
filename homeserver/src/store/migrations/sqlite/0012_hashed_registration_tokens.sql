-- Registration tokens are stored hashed, like access tokens: `token` becomes the token's id
-- (URL-safe base64 of its SHA-256), `hint` keeps its first characters for the org admin's
-- list. Rows from before are hashed by the server at start (`hashed` false until then).
ALTER TABLE registration_tokens ADD COLUMN hint TEXT NOT NULL DEFAULT '';
ALTER TABLE registration_tokens ADD COLUMN hashed BOOLEAN NOT NULL DEFAULT FALSE;
