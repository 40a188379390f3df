-- sqlite3 users.sqlite < users.sql : the tables maps/mailboxes.cf asks.
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, password TEXT NOT NULL,
                    extra, privileges TEXT NOT NULL DEFAULT '');
CREATE TABLE aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, destination TEXT NOT NULL,
                      permitted_senders TEXT);
INSERT INTO users (email, password) VALUES ('root@localhost', '{BLF-CRYPT}not-a-real-hash');
INSERT INTO aliases (source, destination) VALUES ('postmaster@localhost', 'root@localhost');
