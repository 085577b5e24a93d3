/*
 * Many JDBC connections at once through pgpool-tw in transaction mode, for
 * tests/e2e/test_transaction_drivers.py (which compiles and runs this file).
 *
 * Usage: java -cp postgresql.jar:DIR TxPool URL CLIENTS ROUNDS
 *
 * Each client (one thread, one connection) runs the same PreparedStatement ROUNDS
 * times (server-prepared once the driver's prepareThreshold is reached), cycles
 * through four statements prepared anew each round (the driver's statement cache
 * keeps them server-prepared, or evicts and closes them when the URL makes the cache
 * small), inserts ROUNDS rows with a batch in a committed transaction, inserts one
 * more in a transaction it rolls back, and counts its rows.  Every result is checked
 * against the client's own arguments here; the sum of them all is printed as
 * "checksum N" for the test to compare with its own arithmetic, with the backend pids
 * seen ("pids N": how many distinct, "moved N": clients whose one PreparedStatement
 * ran on more than one server), "named N" (clients whose server, asked at the end,
 * held SUM_SQL as a prepared statement: the driver really prepared it on the server)
 * and "errors N".  Exit status 1 when any client failed.
 */

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

public final class TxPool {
    static final String SUM_SQL = "select ?::int + ?::int as total, pg_backend_pid() as pid";
    /** SUM_SQL as the driver sends it, as pg_prepared_statements shows it. */
    static final String SUM_SENT = "select $1::int + $2::int as total, pg_backend_pid() as pid";

    static final class Result {
        long checksum;
        boolean named;
        final Set<Integer> pids = new HashSet<>();
    }

    static void check(long got, long want, String what) throws SQLException {
        if (got != want) {
            throw new SQLException(what + ": got " + got + ", want " + want);
        }
    }

    static Result client(String url, int i, int rounds) throws SQLException {
        Result r = new Result();
        try (Connection c = DriverManager.getConnection(url)) {
            try (PreparedStatement ps = c.prepareStatement(SUM_SQL)) {
                for (int k = 0; k < rounds; k++) {
                    ps.setInt(1, i);
                    ps.setInt(2, k);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check(rs.getInt(1), i + k, "sum");
                        r.checksum += rs.getInt(1);
                        r.pids.add(rs.getInt(2));
                    }
                }
            }
            for (int k = 0; k < rounds; k++) {
                for (int j = 1; j <= 4; j++) {
                    try (PreparedStatement ps = c.prepareStatement("select ?::int * " + j)) {
                        ps.setInt(1, i + k);
                        try (ResultSet rs = ps.executeQuery()) {
                            rs.next();
                            check(rs.getInt(1), (long) (i + k) * j, "product");
                            r.checksum += rs.getInt(1);
                        }
                    }
                }
            }
            c.setAutoCommit(false);
            try (PreparedStatement ps =
                    c.prepareStatement("insert into rows (client, k) values (?, ?)")) {
                for (int k = 0; k < rounds; k++) {
                    ps.setInt(1, i);
                    ps.setInt(2, k);
                    ps.addBatch();
                }
                ps.executeBatch();
                c.commit();
                ps.setInt(1, i);
                ps.setInt(2, -2);
                ps.executeUpdate();
                c.rollback();
            }
            c.setAutoCommit(true);
            try (PreparedStatement ps =
                    c.prepareStatement("select count(*) from rows where client = ?")) {
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getLong(1), rounds, "rows");
                    r.checksum += rs.getLong(1);
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "select count(*) from pg_prepared_statements where statement = ?")) {
                ps.setString(1, SUM_SENT);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    r.named = rs.getLong(1) > 0;
                }
            }
        }
        return r;
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        int clients = Integer.parseInt(args[1]);
        int rounds = Integer.parseInt(args[2]);
        ExecutorService pool = Executors.newFixedThreadPool(clients);
        List<Future<Result>> futures = new ArrayList<>();
        for (int i = 0; i < clients; i++) {
            final int client = i;
            futures.add(pool.submit(() -> client(url, client, rounds)));
        }
        long checksum = 0;
        int errors = 0;
        int moved = 0;
        int named = 0;
        Set<Integer> pids = new HashSet<>();
        for (Future<Result> future : futures) {
            try {
                Result r = future.get();
                checksum += r.checksum;
                pids.addAll(r.pids);
                if (r.pids.size() > 1) {
                    moved++;
                }
                if (r.named) {
                    named++;
                }
            } catch (Exception e) {
                errors++;
                Throwable cause = e.getCause() != null ? e.getCause() : e;
                System.err.println("client failed: " + cause);
            }
        }
        pool.shutdown();
        pool.awaitTermination(10, TimeUnit.SECONDS);
        System.out.println("checksum " + checksum);
        System.out.println("pids " + pids.size());
        System.out.println("moved " + moved);
        System.out.println("named " + named);
        System.out.println("errors " + errors);
        System.exit(errors == 0 ? 0 : 1);
    }
}
